"""``gym:<id>``: any Gymnasium environment that follows the common multi-agent convention.

The convention (used by Level-Based Foraging, the Multi-Robot Warehouse and epymarl's wrappers):

- ``observation_space`` is a ``Tuple`` with one space per agent; ``reset``/``step`` return a tuple
  (or list) of per-agent observations. Each is flattened to float32 with
  ``gymnasium.spaces.flatten`` and zero-padded to the largest agent's size.
- ``action_space`` is a ``Tuple`` of ``Discrete`` (one per agent) or a ``MultiDiscrete`` with one
  entry per agent; agents with fewer actions get their extra actions masked out.
- ``step`` returns one reward per agent (a list) or one shared float; the team reward is their sum
  (``env_args.reward_aggregation: mean`` averages instead; a shared float is used as it is).
  ``terminated``/``truncated`` may be bools or per-agent lists (the episode ends when all agents
  are done).
- Available actions, first found of: ``info["action_mask"]`` or ``info["avail_actions"]`` (shape
  ``[n_agents, n_actions]``), ``env.unwrapped.get_avail_actions()``,
  ``env.unwrapped.action_masks()``, ``env.unwrapped.valid_actions`` (method or attribute);
  otherwise every action is available.
- Global state: ``env.unwrapped.get_state()`` when the environment has it, otherwise the
  concatenation of the agents' flattened observations.
- Time limit: ``env_args.time_limit`` (default: the registered ``max_episode_steps``; required if
  the environment has none). Reaching it gives ``truncated``; the environment's ``terminated`` is
  the true terminal.

Copy ``i`` is seeded with ``seed + i`` on its first reset. ``env_args.workers`` runs the copies in
worker processes; then the environment must be registered with an importable entry point (a
``"module:Class"`` string or a class defined in an importable module, not in ``__main__`` of an
interactive session).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
from typing import Any, Callable

import numpy as np

from qmix.envs.base import EnvInfo
from qmix.envs.registry import check_env_args, register
from qmix.envs.vector import (
    VECTOR_ENV_ARGS,
    SingleEnv,
    VectorEnv,
    check_reward_aggregation,
    team_reward,
)
from qmix.errors import QmixError, missing_package

GYM_ENV_ARGS: dict[str, Any] = {
    "time_limit": None,  # int; default: the registered max_episode_steps
    "reward_aggregation": "sum",
    "make_kwargs": {},  # passed to gymnasium.make
    "info_keys": [],  # names read from the final step's info as episode outcomes (e.g. battle_won)
    "avail_masks": True,  # use the environment's action masks when it has them
    **VECTOR_ENV_ARGS,
}


def import_gymnasium(extra: str = "gym", what: str = "gym:<id> environments"):
    try:
        import gymnasium
    except ImportError:
        raise missing_package("gymnasium", extra, what) from None
    return gymnasium


def _flatten_fn(space) -> tuple[Callable[[Any], np.ndarray], int]:
    """A fast flattener for one agent's observation space and its flat size."""
    from gymnasium import spaces

    # Module-level functions (through partial) so the env state can be pickled into checkpoints.
    if isinstance(space, spaces.Box):
        return _flatten_box, int(np.prod(space.shape))
    return functools.partial(_flatten_space, space), int(spaces.flatdim(space))


def _every(flags) -> bool:
    """One end flag from a library's: a bool as is, per-agent flags (list, tuple, dict, array)
    only when every agent's is set."""
    if isinstance(flags, dict):
        flags = flags.values()
    elif isinstance(flags, np.ndarray):
        return bool(flags.all())
    if isinstance(flags, (bool, np.bool_, int, np.integer)):
        return bool(flags)
    return all(bool(f) for f in flags)


def _flatten_box(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).reshape(-1)


def _flatten_space(space, x) -> np.ndarray:
    from gymnasium import spaces

    return np.asarray(spaces.flatten(space, x), dtype=np.float32).reshape(-1)


def _action_counts(env_id: str, action_space, n_agents: int) -> list[int]:
    from gymnasium import spaces

    if isinstance(action_space, spaces.Tuple):
        counts = []
        for sp in action_space.spaces:
            if not isinstance(sp, spaces.Discrete):
                raise QmixError(
                    f"{env_id}: every agent's action space must be Discrete, got {sp}; "
                    "qmix learns discrete actions only."
                )
            counts.append(int(sp.n))
    elif isinstance(action_space, spaces.MultiDiscrete) and len(action_space.nvec.shape) == 1:
        counts = [int(n) for n in action_space.nvec]
    else:
        raise QmixError(
            f"{env_id}: the action space must be a Tuple of Discrete or a MultiDiscrete with one "
            f"entry per agent, got {action_space}."
        )
    if len(counts) != n_agents:
        raise QmixError(
            f"{env_id}: the action space has {len(counts)} agents but the observation space has {n_agents}."
        )
    return counts


class GymCopy(SingleEnv):
    """One Gymnasium multi-agent environment behind the :class:`SingleEnv` interface."""

    def __init__(
        self,
        env,
        env_id: str,
        seed: int,
        time_limit: int | None,
        reward_aggregation: str = "sum",
        info_keys: tuple[str, ...] = (),
        avail_masks: bool = True,
        avail_fn: Callable[[Any, dict], Any] | None = None,
    ):
        from gymnasium import spaces

        self.env, self.env_id, self.seed = env, env_id, seed
        self.how = reward_aggregation
        self.info_keys = tuple(info_keys)
        self.use_masks = avail_masks
        self.avail_fn = avail_fn
        self._seeded = False

        obs_space = env.observation_space
        if not isinstance(obs_space, spaces.Tuple):
            raise QmixError(
                f"{env_id}: the observation space must be a Tuple with one space per agent "
                f"(the multi-agent Gymnasium convention), got {type(obs_space).__name__}."
            )
        flat = [_flatten_fn(sp) for sp in obs_space.spaces]
        self._flatten = [f for f, _ in flat]
        self._obs_sizes = [d for _, d in flat]
        n = len(flat)
        self._counts = _action_counts(env_id, env.action_space, n)
        n_actions = max(self._counts)
        self._own = np.zeros((n, n_actions), bool)
        for i, c in enumerate(self._counts):
            self._own[i, :c] = True
        obs_dim = max(self._obs_sizes)

        unwrapped = env.unwrapped
        self._get_state = getattr(unwrapped, "get_state", None)
        if not callable(self._get_state):
            self._get_state = None
        if self._get_state is not None:
            size_fn = getattr(unwrapped, "get_state_size", None)
            if callable(size_fn):
                state_dim = int(size_fn())
            elif isinstance(getattr(unwrapped, "state_space", None), spaces.Space):
                state_dim = int(spaces.flatdim(unwrapped.state_space))
            else:  # measure it (the first real reset reseeds, so this changes no trajectory)
                env.reset(seed=seed)
                state_dim = int(np.asarray(self._get_state(), np.float32).size)
        else:
            state_dim = int(sum(self._obs_sizes))

        if time_limit is None:
            time_limit = getattr(env.spec, "max_episode_steps", None) if env.spec is not None else None
        if time_limit is None:
            raise QmixError(
                f"{env_id} has no registered time limit: set env_args.time_limit (e.g. time_limit=100)."
            )
        self.info = EnvInfo(
            n_agents=n, n_actions=n_actions, obs_dim=obs_dim, state_dim=state_dim,
            episode_limit=int(time_limit), info_keys=self.info_keys,
        )
        self._obs = np.zeros((n, obs_dim), np.float32)

    # -- conversions ------------------------------------------------------------------------

    def _observe(self, obs, info: dict):
        n = self.info.n_agents
        if isinstance(obs, dict):
            obs = list(obs.values())
        if len(obs) != n:
            raise QmixError(f"{self.env_id} returned {len(obs)} observations for {n} agents.")
        out = self._obs
        out[:] = 0.0
        parts = []
        for i in range(n):
            o = self._flatten[i](obs[i])
            out[i, : o.shape[0]] = o
            parts.append(o)
        if self._get_state is not None:
            state = np.asarray(self._get_state(), np.float32).reshape(-1)
        else:
            state = np.concatenate(parts)
        return out.copy(), state, self._avail(info)

    def _avail(self, info: dict) -> np.ndarray:
        if not self.use_masks:
            return self._own.copy()
        mask = None
        if self.avail_fn is not None:
            mask = self.avail_fn(self.env, info)
        if mask is None and isinstance(info, dict):
            mask = info.get("action_mask", info.get("avail_actions"))
        if mask is None:
            u = self.env.unwrapped
            for name in ("get_avail_actions", "action_masks", "valid_actions"):
                attr = getattr(u, name, None)
                if attr is not None:
                    mask = attr() if callable(attr) else attr
                    break
        if mask is None:
            return self._own.copy()
        out = np.zeros_like(self._own)
        for i, row in enumerate(mask):
            row = np.asarray(row, dtype=bool).reshape(-1)
            out[i, : row.shape[0]] = row
        out &= self._own
        out[~out.any(axis=1), 0] = True  # never leave an agent without an action
        return out

    # -- SingleEnv ----------------------------------------------------------------------------

    def reset(self):
        if not self._seeded:
            obs, info = self.env.reset(seed=self.seed)
            self.env.action_space.seed(self.seed)
            self._seeded = True
        else:
            obs, info = self.env.reset()
        return self._observe(obs, info)

    def step(self, actions):
        acts = tuple(np.asarray(actions).tolist())  # Python ints, as the libraries expect
        obs, rewards, terminated, truncated, info = self.env.step(acts)
        obs, state, avail = self._observe(obs, info)
        reward = team_reward(rewards, self.how)
        term, trunc = _every(terminated), _every(truncated)
        out_info = {}
        if self.info_keys and isinstance(info, dict):
            for k in self.info_keys:
                if k in info:
                    out_info[k] = float(np.asarray(info[k], dtype=np.float64).mean())
        return obs, state, avail, reward, term, trunc, out_info

    def close(self):
        self.env.close()


# ----------------------------------------------------------------------------------------------
# Factories shared with lbf and rware
# ----------------------------------------------------------------------------------------------


def resolve_spec(family: str, name: str, prefix: str = ""):
    """The registered ``EnvSpec`` of ``name`` with a clear error (and close matches) if unknown.

    ``name`` may be ``module:EnvId``: the module is imported first (it registers the id), as
    ``gymnasium.make`` does.
    """
    gymnasium = import_gymnasium()
    if ":" in name:
        module, name = name.split(":", 1)
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise QmixError(f"could not import module {module!r} for {family}:{module}:{name}: {exc}.") from None
    try:
        return gymnasium.spec(name)
    except Exception:
        ids = [i for i in gymnasium.registry if i.startswith(prefix)] if prefix else list(gymnasium.registry)
        close = difflib.get_close_matches(name, ids, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise QmixError(f"unknown Gymnasium id {name!r} for family {family}{hint}.") from None


def make_gym_copy(
    spec,
    env_id: str,
    make_kwargs: dict,
    time_limit: int | None,
    reward_aggregation: str,
    info_keys: tuple[str, ...],
    avail_masks: bool,
    avail_fn,
    index: int,
    seed: int,
    adapt: Callable[[Any], None] | None = None,
) -> GymCopy:
    """Build copy ``index`` (module-level so worker processes can unpickle it); ``adapt(env)``,
    if given, is called on the new environment first."""
    import gymnasium

    kwargs = dict(make_kwargs)
    kwargs.setdefault("disable_env_checker", True)
    if time_limit is not None and spec.max_episode_steps is not None:
        kwargs.setdefault("max_episode_steps", time_limit)
    try:
        env = gymnasium.make(spec, **kwargs)
    except QmixError:
        raise
    except Exception as exc:
        raise QmixError(f"could not build {env_id}: {type(exc).__name__}: {exc}") from None
    if adapt is not None:
        adapt(env)
    return GymCopy(env, env_id, seed, time_limit, reward_aggregation, tuple(info_keys), avail_masks, avail_fn)


def build_vector(env_id: str, spec, num_envs, seed, device, args: dict, avail_fn=None, adapt=None) -> VectorEnv:
    how = check_reward_aggregation(env_id, args["reward_aggregation"])
    time_limit = args.get("time_limit")
    if time_limit is not None and (not isinstance(time_limit, int) or isinstance(time_limit, bool) or time_limit < 1):
        raise QmixError(f"env_args.time_limit for {env_id} must be a positive integer, got {time_limit!r}.")
    info_keys = args.get("info_keys", [])
    if not isinstance(info_keys, (list, tuple)) or not all(isinstance(k, str) for k in info_keys):
        raise QmixError(f"env_args.info_keys for {env_id} must be a list of names, got {info_keys!r}.")
    make_copy = functools.partial(
        make_gym_copy, spec, env_id, dict(args.get("make_kwargs", {})), time_limit, how,
        tuple(info_keys), bool(args.get("avail_masks", True)), avail_fn, adapt=adapt,
    )
    return VectorEnv(env_id, make_copy, num_envs, seed, device, args["workers"], args["worker_timeout"])


def make_gym(name: str, num_envs: int, seed: int, device, **env_args):
    """``gym:<id>`` or ``gym:<module>:<id>`` (the module is imported first to register ``id``)."""
    env_id = f"gym:{name}"
    args = check_env_args(env_id, env_args, GYM_ENV_ARGS)
    spec = resolve_spec("gym", name)
    return build_vector(env_id, spec, num_envs, seed, device, args)


def with_kwargs(spec, **overrides):
    """A copy of ``spec`` whose constructor kwargs are updated (e.g. the library's own limit)."""
    return dataclasses.replace(spec, kwargs={**spec.kwargs, **overrides})


register("gym", make_gym)
