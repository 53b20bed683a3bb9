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
"""

from __future__ import annotations

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


def make_lbf(name: str, num_envs: int, seed: int, device, **env_args):
    env_id = f"lbf:{name}"
    args = check_env_args(env_id, env_args, LBF_ENV_ARGS)
    _import()
    spec = with_kwargs(resolve_spec("lbf", name, prefix="Foraging"), max_episode_steps=NO_LIMIT)
    args["info_keys"] = []
    return build_vector(env_id, spec, num_envs, seed, device, args,
                        avail_fn=lbf_avail if args["avail_masks"] else None)


register("lbf", make_lbf, lambda: list(KNOWN))
