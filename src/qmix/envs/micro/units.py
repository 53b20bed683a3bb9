"""The unit-type table: SC2 stats (Faster-speed seconds) of every unit that appears in SMAC's maps.

Everything the simulator knows about a unit type is a row here; the simulator turns the rows
of a map's units into per-unit constant tensors once, when the environment is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field

LOOPS_PER_SECOND = 22.4  # SC2 game loops per second at "Faster" speed
STEP_MUL = 8  # game loops per environment step (SMAC's step_mul)


@dataclass(frozen=True)
class UnitType:
    """One SC2 unit type. Distances in map units, times in seconds, speeds in units per second."""

    name: str
    race: str  # "T", "P" or "Z"
    hp: float
    shield: float
    armor: float
    damage: float  # per hit (for a baneling: of its explosion); 0 for units without a weapon
    hits: int  # hits per attack (zealot and colossus: 2)
    bonus: float  # extra damage per hit against targets with attribute ``bonus_vs``
    bonus_vs: str | None
    cooldown: float  # seconds between attacks
    range: float  # weapon (or heal) range, edge to edge
    speed: float  # movement speed of the enemy AI's units
    radius: float
    sight: float
    attributes: frozenset = field(default_factory=frozenset)  # light, armored, bio, mech, massive, structure
    cooldown_norm: float = 15.0  # SMAC's normaliser of the cooldown state feature (game loops)
    air: bool = False
    hits_air: bool = False
    hits_ground: bool = True
    agent_speed: float | None = None  # speed when the unit belongs to the agents, if it differs
    heal_rate: float = 0.0  # HP per second (medivac)
    heal_energy_per_hp: float = 0.0
    energy_start: float = 0.0
    energy_max: float = 0.0
    energy_regen: float = 0.0  # energy per second
    splash: str | None = None  # "line" (colossus lances) or "blast" (baneling explosion)
    splash_size: float = 0.0  # line: half length of the lance line; blast: radius
    static: bool = False  # structures never move (spine crawler)
    cliff_walker: bool = False  # colossus: may cross cliff faces


def _attrs(*names: str) -> frozenset:
    return frozenset(names)


UNIT_TYPES: dict[str, UnitType] = {
    u.name: u
    for u in [
        UnitType("marine", "T", 45, 0, 0, 6, 1, 0, None, 0.61, 5, 3.15, 0.375, 9,
                 _attrs("light", "bio"), cooldown_norm=15, hits_air=True),
        UnitType("marauder", "T", 125, 0, 1, 10, 1, 10, "armored", 1.07, 6, 3.15, 0.5625, 10,
                 _attrs("armored", "bio"), cooldown_norm=25),
        UnitType("medivac", "T", 150, 0, 1, 0, 0, 0, None, 0.0, 4, 3.5, 0.75, 11,
                 _attrs("armored", "mech"), cooldown_norm=200, air=True, hits_ground=False,
                 agent_speed=3.85, heal_rate=12.6, heal_energy_per_hp=1 / 3, energy_start=50,
                 energy_max=200, energy_regen=0.7875),
        UnitType("stalker", "P", 80, 80, 1, 13, 1, 5, "armored", 1.34, 6, 4.13, 0.625, 10,
                 _attrs("armored", "mech"), cooldown_norm=35, hits_air=True),
        UnitType("zealot", "P", 100, 50, 1, 8, 2, 0, None, 0.86, 0.1, 3.15, 0.5, 9,
                 _attrs("light", "bio"), cooldown_norm=22),
        UnitType("colossus", "P", 200, 150, 1, 10, 2, 5, "light", 1.07, 7, 3.15, 1.0, 10,
                 _attrs("armored", "mech", "massive"), cooldown_norm=24, splash="line",
                 splash_size=1.4, cliff_walker=True),
        UnitType("hydralisk", "Z", 80, 0, 0, 12, 1, 0, None, 0.59, 5, 3.15, 0.625, 9,
                 _attrs("light", "bio"), cooldown_norm=10, hits_air=True),
        UnitType("zergling", "Z", 35, 0, 0, 5, 1, 0, None, 0.497, 0.1, 4.13, 0.375, 8,
                 _attrs("light", "bio"), cooldown_norm=11),
        # SC2 4.6.2+ values: 16 (+19 light); the older 20 (+15 light) also gives 35 vs light.
        UnitType("baneling", "Z", 30, 0, 0, 16, 1, 19, "light", 0.0, 0.25, 3.5, 0.375, 8,
                 _attrs("bio"), cooldown_norm=1, splash="blast", splash_size=2.2),
        UnitType("spine_crawler", "Z", 300, 0, 2, 25, 1, 5, "armored", 1.32, 7, 0.0, 1.125, 11,
                 _attrs("armored", "bio", "structure"), cooldown_norm=15, static=True),
    ]
}

# SC2 constants used by the simulator.
SHIELD_REGEN_DELAY_LOOPS = 160  # protoss shields regenerate after this long without damage
SHIELD_REGEN_RATE = 2.8  # shield per second
ZERG_REGEN_RATE = 0.38  # HP per second
MIN_HIT_DAMAGE = 0.5  # SC2's floor on one hit's damage after armor
