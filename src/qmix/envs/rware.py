"""``rware:<id>``: the Multi-Robot Warehouse (package ``rware``), e.g. ``rware:rware-tiny-2ag-v2``.

A thin specialisation of the ``gym`` family (see :mod:`qmix.envs.gym`):

- team reward: the sum of the agents' rewards (each delivery of a requested shelf pays 1 to the
  agent that delivers it); ``reward_aggregation: mean`` averages.
- state: the concatenation of the agents' observations (RWARE has no global state vector).
- time limit: ``time_limit`` (default 500, as in Papoudakis et al. 2021) gives ``truncated``;
  RWARE has no terminal state, so ``terminated`` is never set. RWARE's own step limit is lifted
  so that it cannot end an episode as if it were terminal.
- available actions: all (RWARE has no action masks).
"""

from __future__ import annotations

from typing import Any

from qmix.envs.gym import build_vector, resolve_spec, with_kwargs
from qmix.envs.registry import check_env_args, register
from qmix.envs.vector import VECTOR_ENV_ARGS
from qmix.errors import missing_package

RWARE_ENV_ARGS: dict[str, Any] = {
    "time_limit": 500,
    "reward_aggregation": "sum",
    "make_kwargs": {},
    **VECTOR_ENV_ARGS,
}

# Tasks of the benchmark (Papoudakis et al., 2021) and a few more; any registered id works.
KNOWN = [
    "rware-tiny-2ag-v2",
    "rware-tiny-4ag-v2",
    "rware-small-4ag-v2",
    "rware-tiny-2ag-hard-v2",
    "rware-tiny-4ag-hard-v2",
    "rware-medium-4ag-v2",
]


def _import():
    try:
        import rware  # noqa: F401  (registers the rware-* ids with Gymnasium)
    except ImportError:
        raise missing_package("rware", "rware", "the Multi-Robot Warehouse (rware:...)") from None


def make_rware(name: str, num_envs: int, seed: int, device, **env_args):
    env_id = f"rware:{name}"
    args = check_env_args(env_id, env_args, RWARE_ENV_ARGS)
    _import()
    spec = with_kwargs(resolve_spec("rware", name, prefix="rware"), max_steps=None, max_inactivity_steps=None)
    args["info_keys"] = []
    args["avail_masks"] = False
    return build_vector(env_id, spec, num_envs, seed, device, args)


register("rware", make_rware, lambda: list(KNOWN))
