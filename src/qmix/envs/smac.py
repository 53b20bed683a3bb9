"""``smac:<map>`` and ``smacv2:<scenario>``: the real StarCraft II SMAC and SMACv2.

These need StarCraft II itself (``SC2PATH``, default ``~/StarCraftII`` on Linux) with the SMAC
maps in ``$SC2PATH/Maps/SMAC_Maps``, and the Python package from GitHub:
``pip install git+https://github.com/oxwhirl/smac.git`` (``smac:``) or
``pip install git+https://github.com/oxwhirl/smacv2.git`` (``smacv2:``). For StarCraft-free
battles with the same interface use the ``micro`` family.

The adapter uses SMAC's documented API only: ``get_env_info()``, ``reset()``, ``get_obs()``,
``get_state()``, ``get_avail_actions()``, ``step(actions) -> (reward, terminated, info)``, ``close()``.

- team reward: SMAC's own reward, already one shared team reward (shaped and scaled by SMAC;
  options such as ``reward_sparse`` go in ``env_kwargs``).
- state: SMAC's global state (``get_state()``).
- available actions: SMAC's masks (``get_avail_actions()``).
- time limit: the map's ``episode_limit``. SMAC reports a timeout as ``terminated`` (with
  ``info["episode_limit"]`` only when ``continuing_episode`` is on); qmix turns every timeout into
  ``truncated`` (bootstrap) and keeps ``terminated`` for won or lost battles.
- ``info``: ``battle_won``, ``dead_allies``, ``dead_enemies`` of the ended episodes.
- copies: each copy is one StarCraft II instance, seeded ``seed + i``; by default each runs in its
  own worker process (``workers: -1``) so that the copies' game steps overlap.
- ``smacv2:<race>_<n>_vs_<m>`` (race ``protoss``, ``terran`` or ``zerg``, e.g.
  ``smacv2:protoss_5_vs_5``) builds SMACv2's ``StarCraftCapabilityEnvWrapper`` on map
  ``10gen_<race>`` with the SMACv2 paper's unit-type and start-position distributions.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.util
import os
import re
import sys
from typing import Any

import numpy as np

from qmix.envs.base import EnvInfo
from qmix.envs.registry import check_env_args, register
from qmix.envs.vector import SingleEnv, VectorEnv
from qmix.errors import QmixError

SMAC_ENV_ARGS: dict[str, Any] = {
    "env_kwargs": {},  # passed to StarCraft2Env (e.g. difficulty, reward_sparse, obs_last_action)
    "workers": -1,
    "worker_timeout": 300.0,  # launching StarCraft II can take a while
}

INSTALL = {
    "smac": "pip install git+https://github.com/oxwhirl/smac.git",
    "smacv2": "pip install git+https://github.com/oxwhirl/smacv2.git",
}

# The maps of the SMAC paper (any map the installed smac knows works too).
SMAC_MAPS = [
    "3m", "8m", "25m", "2s3z", "3s5z", "MMM", "5m_vs_6m", "8m_vs_9m", "10m_vs_11m", "27m_vs_30m",
    "3s5z_vs_3s6z", "MMM2", "2s_vs_1sc", "3s_vs_5z", "6h_vs_8z", "bane_vs_bane", "2c_vs_64zg",
    "corridor", "so_many_baneling",
]

RACES = {
    # race: (unit types, weights, unit types never sampled for a whole team)
    "protoss": (["stalker", "zealot", "colossus"], [0.45, 0.45, 0.1], []),
    "terran": (["marine", "marauder", "medivac"], [0.45, 0.45, 0.1], ["medivac"]),
    "zerg": (["zergling", "baneling", "hydralisk"], [0.45, 0.1, 0.45], ["baneling"]),
}
SMACV2_SIZES = [(5, 5), (10, 10), (10, 11), (20, 20), (20, 23)]
SMACV2_SCENARIOS = [f"{race}_{a}_vs_{b}" for race in RACES for a, b in SMACV2_SIZES]
INFO_KEYS = ("battle_won", "dead_allies", "dead_enemies")


def _sc2_path() -> str:
    if os.environ.get("SC2PATH"):
        return os.environ["SC2PATH"]
    if sys.platform == "darwin":
        return "/Applications/StarCraft II"
    if sys.platform == "win32":
        return "C:/Program Files (x86)/StarCraft II"
    return os.path.expanduser("~/StarCraftII")


def check_starcraft(family: str) -> None:
    """Stop with one sentence saying what to install when the package or StarCraft II is missing."""
    package = "smac" if family == "smac" else "smacv2"
    try:
        importlib.import_module(f"{package}.env")
    except ImportError as exc:
        if package == "smac" and exc.name == "smac.env" and importlib.util.find_spec("smac") is not None:
            raise QmixError(
                "the installed 'smac' package is SMAC3 (hyperparameter optimisation), not StarCraft SMAC: "
                f"run `pip uninstall smac` and then `{INSTALL[package]}`."
            ) from None
        if exc.name and exc.name.split(".")[0] == package:
            raise QmixError(
                f"{family}:... environments need the '{package}' package from GitHub, which is not installed: "
                f"run `{INSTALL[package]}` (and install StarCraft II; or use the micro family, which needs neither)."
            ) from None
        raise QmixError(
            f"the '{package}' package could not be imported ({type(exc).__name__}: {exc}); "
            f"reinstall it with `{INSTALL[package]}`."
        ) from None
    path = _sc2_path()
    if not os.path.isdir(path):
        raise QmixError(
            f"StarCraft II was not found at {path}: install it (Linux: unzip Blizzard's SC2.4.10 package from "
            "https://github.com/Blizzard/s2client-proto#downloads into ~/StarCraftII) or set SC2PATH to "
            "where it is, then copy the SMAC maps into $SC2PATH/Maps/SMAC_Maps (or use the micro family)."
        )
    if not os.path.isdir(os.path.join(path, "Maps", "SMAC_Maps")):
        raise QmixError(
            f"the SMAC maps are missing from {os.path.join(path, 'Maps', 'SMAC_Maps')}: download SMAC_Maps.zip "
            f"from https://github.com/oxwhirl/{package}/releases and unzip it into {os.path.join(path, 'Maps')}."
        )


def smacv2_config(name: str) -> tuple[str, dict]:
    """``protoss_5_vs_5 -> ("10gen_protoss", capability_config)``."""
    m = re.fullmatch(r"(protoss|terran|zerg)_(\d+)_vs_(\d+)", name)
    if not m:
        close = difflib.get_close_matches(name, SMACV2_SCENARIOS, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise QmixError(
            f"unknown SMACv2 scenario {name!r}{hint}; use <race>_<allies>_vs_<enemies> with race protoss, "
            "terran or zerg, e.g. protoss_5_vs_5."
        )
    race, n_units, n_enemies = m.group(1), int(m.group(2)), int(m.group(3))
    unit_types, weights, exceptions = RACES[race]
    team_gen = {"dist_type": "weighted_teams", "unit_types": list(unit_types), "weights": list(weights),
                "observe": True}
    if exceptions:
        team_gen["exception_unit_types"] = list(exceptions)
    config = {
        "n_units": n_units,
        "n_enemies": n_enemies,
        "team_gen": team_gen,
        "start_positions": {"dist_type": "surrounded_and_reflect", "p": 0.5, "map_x": 32, "map_y": 32},
    }
    return f"10gen_{race}", config


class SMACCopy(SingleEnv):
    """One StarCraft II instance (launched by SMAC on the first reset)."""

    copyable = False  # a running game cannot be deep-copied into a checkpoint

    def __init__(self, family: str, name: str, seed: int, env_kwargs: dict):
        self.env_id = f"{family}:{name}"
        kwargs = dict(env_kwargs)
        try:
            if family == "smac":
                from smac.env import StarCraft2Env

                self.env = StarCraft2Env(map_name=name, seed=seed, **kwargs)
            else:
                from smacv2.env import StarCraftCapabilityEnvWrapper

                map_name, capability = smacv2_config(name)
                kwargs = {"obs_own_pos": True, "use_unit_ranges": True, **kwargs}
                self.env = StarCraftCapabilityEnvWrapper(
                    capability_config=capability, map_name=map_name, seed=seed, **kwargs
                )
        except QmixError:
            raise
        except KeyError as exc:
            raise QmixError(f"unknown SMAC map {name!r} ({exc}); known maps include {', '.join(SMAC_MAPS)}.") from None
        except TypeError as exc:
            raise QmixError(f"bad env_args.env_kwargs for {self.env_id}: {exc}.") from None
        info = self.env.get_env_info()
        self.n_agents = int(info["n_agents"])
        self.limit = int(info["episode_limit"])
        self.info = EnvInfo(
            n_agents=self.n_agents, n_actions=int(info["n_actions"]), obs_dim=int(info["obs_shape"]),
            state_dim=int(info["state_shape"]), episode_limit=self.limit, info_keys=INFO_KEYS,
        )
        self._t = 0

    def _observe(self):
        obs = np.asarray(self.env.get_obs(), np.float32).reshape(self.n_agents, -1)
        state = np.asarray(self.env.get_state(), np.float32).reshape(-1)
        avail = np.asarray(self.env.get_avail_actions()).reshape(self.n_agents, -1).astype(bool)
        return obs, state, avail

    def reset(self):
        self.env.reset()
        self._t = 0
        return self._observe()

    def step(self, actions):
        reward, terminated, info = self.env.step([int(a) for a in actions])
        self._t += 1
        info = info or {}
        won = bool(info.get("battle_won", False))
        lost = int(info.get("dead_allies", 0)) >= self.n_agents
        timeout = bool(info.get("episode_limit", False)) or (
            bool(terminated) and self._t >= self.limit and not won and not lost
        )
        term = bool(terminated) and not timeout
        obs, state, avail = self._observe()
        out = {k: float(info.get(k, 0.0)) for k in INFO_KEYS}
        return obs, state, avail, float(reward), term, timeout, out

    def close(self):
        self.env.close()


def _make_copy(family, name, env_kwargs, index, seed):
    return SMACCopy(family, name, seed, env_kwargs)


def _factory(family: str):
    def make(name: str, num_envs: int, seed: int, device, **env_args):
        env_id = f"{family}:{name}"
        args = check_env_args(env_id, env_args, SMAC_ENV_ARGS)
        if family == "smacv2":
            smacv2_config(name)  # a bad scenario name fails before anything is launched
        check_starcraft(family)
        make_copy = functools.partial(_make_copy, family, name, dict(args["env_kwargs"]))
        return VectorEnv(env_id, make_copy, num_envs, seed, device, args["workers"], args["worker_timeout"])

    return make


def _lister(family: str, names: list[str]):
    def list_names() -> list[str]:
        check_starcraft(family)  # one clear note for the family when it cannot run here
        return list(names)

    return list_names


register("smac", _factory("smac"), _lister("smac", SMAC_MAPS))
register("smacv2", _factory("smacv2"), _lister("smacv2", SMACV2_SCENARIOS))
