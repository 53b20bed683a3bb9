"""``micro``: SMAC's 23 micromanagement maps without StarCraft II, batched in PyTorch.

``qmix.envs.make("micro:3m", num_envs=1024)`` builds 1024 battles stepped together. The maps and
units are data (:mod:`.maps`, :mod:`.units`), the simulator is :class:`.env.MicroEnv`; see
docs/micro.md for the mechanics, the options and every difference from SMAC.
"""

from __future__ import annotations

import dataclasses
import difflib

import torch

from qmix.envs.micro.env import MicroConfig, MicroEnv
from qmix.envs.micro.maps import MAPS
from qmix.envs.registry import check_env_args, register
from qmix.errors import QmixError

DEFAULT_ENV_ARGS = {f.name: f.default for f in dataclasses.fields(MicroConfig)}


def make_micro(name: str, num_envs: int, seed: int, device: torch.device, **env_args) -> MicroEnv:
    """Registry factory for ``micro:<map>``."""
    env_id = f"micro:{name}"
    if name not in MAPS:
        close = difflib.get_close_matches(name, MAPS, n=3)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise QmixError(f"unknown micro map {name!r}{hint}; known maps: {', '.join(MAPS)}.")
    args = check_env_args(env_id, env_args, DEFAULT_ENV_ARGS)
    return MicroEnv(MAPS[name], num_envs=num_envs, seed=seed, device=torch.device(device),
                    config=MicroConfig(**args))


def map_names() -> list[str]:
    return list(MAPS)


def map_table() -> list[dict]:
    """One row per map with its sizes under the default env args (for ``qmix envs``)."""
    rows = []
    for name in MAPS:
        env = MicroEnv(MAPS[name], num_envs=1, seed=0, device=torch.device("cpu"))
        rows.append({"name": name, "n_agents": env.info.n_agents, "n_enemies": env.n_enemies,
                     **{k: v for k, v in env.info.as_dict().items() if k != "n_agents"}})
    return rows


register("micro", make_micro, map_names)

__all__ = ["MicroConfig", "MicroEnv", "MAPS", "make_micro", "map_names", "map_table"]
