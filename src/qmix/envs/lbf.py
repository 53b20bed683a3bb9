"""``lbf:<id>``: Level-Based Foraging (package ``lbforaging``), e.g. ``lbf:Foraging-8x8-2p-3f-v3``.

A thin specialisation of the ``gym`` family (see :mod:`qmix.envs.gym`):

- team reward: the sum of the agents' rewards (``reward_aggregation: mean`` averages); LBF's
  rewards are normalised so that collecting every food in an episode sums to 1.
- state: the concatenation of the agents' observations (LBF has no global state vector).
- time limit: ``time_limit`` (default 50, as in Papoudakis et al. 2021) gives ``truncated``;
  collecting every food is the true terminal state (``terminated``). LBF's own step limit is
  lifted so it cannot end an episode as if it were terminal.
- available actions: LBF's own valid moves (a move into a wall, an agent or food, or a load with
  no adjacent food, is unavailable); ``avail_masks: false`` makes every action available, as in
  the benchmark paper (LBF turns an invalid action into a no-op either way).
- observations: LBF's vector observations (food, then self, then the other agents in sight, in
  the agents' order; ``(-1, -1, 0)`` where nothing is seen) are computed here from the
  environment's field and players (:func:`observations`): the same arrays as the library's own
  function, which builds them through per-agent records and checks each against its space, two
  thirds of its step's time. The first observation of every copy is checked against the
  library's. Grid observations (``grid_observation``) always use the library's.
- valid moves: the table LBF keeps after every reset and step (which moves it lets through, and
  the availability masks) is computed here too (:func:`valid_moves`), the same lists in the same
  order as the library's method, which calls a per-action check through the ``Action`` enum, about
  two fifths of what was left of its step; each copy's first ``CHECKED_CALLS`` tables are compared
  with the library's. ``library_obs: true`` keeps the library's own functions for both.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import numpy as np

from qmix.envs.gym import build_vector, resolve_spec, with_kwargs
from qmix.envs.registry import check_env_args, register
from qmix.envs.vector import VECTOR_ENV_ARGS
from qmix.errors import missing_package

LBF_ENV_ARGS: dict[str, Any] = {
    "time_limit": 50,
    "reward_aggregation": "sum",
    "avail_masks": True,
    "library_obs": False,
    "make_kwargs": {},
    **VECTOR_ENV_ARGS,
}

# Tasks of the benchmark (Papoudakis et al., 2021) and the example; any registered id works.
KNOWN = [
    "Foraging-8x8-2p-3f-v3",
    "Foraging-8x8-2p-2f-coop-v3",
    "Foraging-2s-8x8-2p-2f-coop-v3",
    "Foraging-10x10-3p-3f-v3",
    "Foraging-2s-10x10-3p-3f-v3",
    "Foraging-15x15-3p-4f-v3",
    "Foraging-15x15-4p-3f-v3",
    "Foraging-15x15-4p-4f-v3",
]

NO_LIMIT = 2**62  # LBF's own max_episode_steps: never reached, qmix counts the time limit


def _import():
    try:
        import lbforaging  # noqa: F401  (registers the Foraging-* ids with Gymnasium)
    except ImportError:
        raise missing_package("lbforaging", "lbf", "Level-Based Foraging (lbf:...)") from None


def lbf_avail(env, info) -> np.ndarray:
    """LBF's valid actions per agent as a ``[n_agents, 6]`` mask."""
    u = env.unwrapped
    valid = u._valid_actions
    mask = np.zeros((len(u.players), 6), bool)
    for i, player in enumerate(u.players):
        for action in valid[player]:
            mask[i, int(action.value)] = True
    return mask


def observations(env) -> tuple[np.ndarray, ...]:
    """LBF's vector observation of every agent (``ForagingEnv._make_gym_obs`` without grid
    observations), from ``env``'s field and players: for agent i at ``(r, c)`` with sight ``s``,
    its window is rows ``max(r - s, 0) .. min(r + s, rows - 1)`` (columns alike) and positions are
    relative to the window's corner. Food in the window, in row-major order: ``(y, x, level)``
    per slot, ``max_num_food`` slots. Then agents: itself first, then the others in order, each
    seen when both relative coordinates lie in ``[0, 2s]`` (LBF's rule: near the top or left
    edge this reaches past the food window): ``(y, x[, level])``; unused slots ``(-1, -1[, 0])``."""
    sight, rows, cols = env.sight, env.rows, env.cols
    levels, players, field = env._observe_agent_levels, env.players, env.field
    food = [(int(r), int(c), int(field[r, c])) for r, c in zip(*np.nonzero(field))]
    agents = [(int(p.position[0]), int(p.position[1]), int(p.level)) for p in players]
    unseen = [-1, -1, 0] * env.max_num_food + ([-1, -1, 0] if levels else [-1, -1]) * len(agents)
    width, start = 3 if levels else 2, 3 * env.max_num_food
    table = []
    for i, (r, c, _) in enumerate(agents):
        r0, c0 = max(r - sight, 0), max(c - sight, 0)
        r1, c1 = min(r + sight, rows - 1), min(c + sight, cols - 1)
        row = unseen.copy()
        k = 0
        for fr, fc, level in food:
            if r0 <= fr <= r1 and c0 <= fc <= c1:
                row[k:k + 3] = fr - r0, fc - c0, level
                k += 3
        k = start
        for j in [i] + [j for j in range(len(agents)) if j != i]:
            y, x, level = agents[j]
            y, x = y - r0, x - c0
            if 0 <= y <= 2 * sight and 0 <= x <= 2 * sight:
                row[k:k + width] = (y, x, level) if levels else (y, x)
                k += width
        table.append(row)
    out = np.array(table, np.float32)
    return tuple(out)


def _checked_observations(env):
    """:func:`observations`, the first time compared with the library's own (a library version
    whose observations differ keeps its own function, with a warning)."""
    ours = observations(env)
    theirs = type(env)._make_gym_obs(env)
    if len(ours) == len(theirs) and all(np.array_equal(a, b) for a, b in zip(ours, theirs)):
        env._make_gym_obs = functools.partial(observations, env)
    else:
        del env._make_gym_obs
        warnings.warn("lbf: this lbforaging version's observations differ from qmix's; using its own "
                      "(slower) function.", stacklevel=2)
    return theirs


@functools.cache
def _actions() -> tuple:
    """LBF's actions in ``Action``'s order, if it is the order :func:`valid_moves` assumes."""
    from lbforaging.foraging.environment import Action

    actions = tuple(Action)
    names = ("NONE", "NORTH", "SOUTH", "WEST", "EAST", "LOAD")
    return actions if tuple(a.name for a in actions) == names else ()


def valid_moves(env) -> dict:
    """``ForagingEnv._gen_valid_moves``'s table from ``env``'s field and players: for each player,
    its valid actions in ``Action``'s order. NONE always; a move when the cell it leads to is on
    the field and holds no food (players do not block here: LBF resolves collisions when moving);
    LOAD when the four neighbouring cells, clamped to the field, hold food."""
    none, north, south, west, east, load = _actions()
    field = env.field.tolist()
    rows, cols = len(field), len(field[0])
    table = {}
    for p in env.players:
        r, c = int(p.position[0]), int(p.position[1])
        moves = [none]
        if r > 0 and field[r - 1][c] == 0:
            moves.append(north)
        if r < rows - 1 and field[r + 1][c] == 0:
            moves.append(south)
        if c > 0 and field[r][c - 1] == 0:
            moves.append(west)
        if c < cols - 1 and field[r][c + 1] == 0:
            moves.append(east)
        if field[max(r - 1, 0)][c] + field[min(r + 1, rows - 1)][c] + field[r][max(c - 1, 0)] \
                + field[r][min(c + 1, cols - 1)] > 0:
            moves.append(load)
        table[p] = moves
    return table


CHECKED_CALLS = 100  # tables of each copy compared with the library's before trusting valid_moves


def _set_valid_moves(env) -> None:
    env._valid_actions = valid_moves(env)


def _checked_valid_moves(env, calls: list) -> None:
    """The library's valid moves and :func:`valid_moves`, compared, for the first
    ``CHECKED_CALLS`` calls; then :func:`valid_moves` alone (or, after a difference, the
    library's method alone, with a warning)."""
    ours = valid_moves(env)
    type(env)._gen_valid_moves(env)
    if ours != env._valid_actions:
        del env._gen_valid_moves
        warnings.warn("lbf: this lbforaging version's valid moves differ from qmix's; using its own "
                      "(slower) function.", stacklevel=2)
        return
    calls.append(1)
    if len(calls) >= CHECKED_CALLS:
        env._gen_valid_moves = functools.partial(_set_valid_moves, env)


def use_qmix_functions(env) -> None:
    """Make ``env`` (a Gymnasium-made ``ForagingEnv``) build its vector observations with
    :func:`observations` and its valid moves with :func:`valid_moves`; each left as it is where
    the environment overrides the library's functions (or uses grid observations)."""
    u = env.unwrapped
    try:
        from lbforaging.foraging.environment import ForagingEnv
    except ImportError:
        return
    if not isinstance(u, ForagingEnv):
        return
    cls = type(u)
    if not (getattr(u, "_grid_observation", True) or cls._make_gym_obs is not ForagingEnv._make_gym_obs
            or cls._make_obs is not ForagingEnv._make_obs):
        u._make_gym_obs = functools.partial(_checked_observations, u)
    if _actions() and all(getattr(cls, name) is getattr(ForagingEnv, name)
                          for name in ("_gen_valid_moves", "_is_valid_action", "adjacent_food")):
        u._gen_valid_moves = functools.partial(_checked_valid_moves, u, [])


def make_lbf(name: str, num_envs: int, seed: int, device, **env_args):
    env_id = f"lbf:{name}"
    args = check_env_args(env_id, env_args, LBF_ENV_ARGS)
    _import()
    spec = with_kwargs(resolve_spec("lbf", name, prefix="Foraging"), max_episode_steps=NO_LIMIT)
    args["info_keys"] = []
    return build_vector(env_id, spec, num_envs, seed, device, args,
                        avail_fn=lbf_avail if args["avail_masks"] else None,
                        adapt=None if args["library_obs"] else use_qmix_functions)


register("lbf", make_lbf, lambda: list(KNOWN))
