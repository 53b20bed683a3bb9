"""``mpe:<task>``: the cooperative Multi-Particle Environments of PettingZoo's ``mpe2`` package.

Tasks are ``mpe2`` module names, e.g. ``mpe:simple_spread_v3``; only the cooperative ones are
offered (in the competitive ones part of the agents are adversaries, which one QMIX team cannot
be). Actions are discrete (``continuous_actions=False``).

- team reward: the sum of the agents' rewards (``reward_aggregation: mean`` averages). In the
  cooperative tasks most of each agent's reward is the shared global term, so the sum is
  ``n_agents`` times it plus the agents' local terms (as in epymarl's ``common_reward`` sum).
- state: the library's global state, ``env.state()`` (the concatenation of all observations).
- observations: agents with smaller observations (``simple_speaker_listener``) are zero-padded to
  the largest; agents with fewer actions have the missing actions masked out of ``avail``;
  otherwise every action is available (MPE has no action masks).
- time limit: ``time_limit`` (default 25, as in Papoudakis et al. 2021; it is MPE's
  ``max_cycles``) gives ``truncated``; tasks built with ``terminate_on_success=True`` (via
  ``env_kwargs``) end with ``terminated`` when solved.
- ``env_kwargs`` are passed to the task's ``parallel_env`` (e.g. ``{N: 4, local_ratio: 0.5}``).
"""

from __future__ import annotations

import difflib
import functools
import importlib
from typing import Any

import numpy as np

from qmix.envs.base import EnvInfo
from qmix.envs.registry import check_env_args, register
from qmix.envs.vector import VECTOR_ENV_ARGS, SingleEnv, VectorEnv, check_reward_aggregation, team_reward
from qmix.errors import QmixError, missing_package

MPE_ENV_ARGS: dict[str, Any] = {
    "time_limit": 25,
    "reward_aggregation": "sum",
    "env_kwargs": {},
    **VECTOR_ENV_ARGS,
}

COOPERATIVE = [
    "simple_spread_v3",
    "simple_reference_v3",
    "simple_speaker_listener_v4",
    "simple_formation_v1",
    "simple_line_v1",
    "simple_v3",
]
COMPETITIVE = [
    "simple_adversary_v3", "simple_crypto_v3", "simple_push_v3", "simple_tag_v3",
    "simple_world_comm_v3", "collect_treasure_v1",
]


def _module(name: str):
    if name in COMPETITIVE:
        raise QmixError(
            f"mpe:{name} is a competitive task (some agents are adversaries); qmix trains one "
            f"cooperative team: use one of {', '.join(COOPERATIVE)}."
        )
    if name not in COOPERATIVE:
        close = difflib.get_close_matches(name, COOPERATIVE, n=2)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise QmixError(f"unknown MPE task {name!r}{hint}; known: {', '.join(COOPERATIVE)}.")
    try:
        return importlib.import_module(f"mpe2.{name}")
    except ImportError as exc:
        if exc.name and exc.name.split(".")[0] in ("mpe2", "pettingzoo"):
            raise missing_package("mpe2", "mpe", "the Multi-Particle Environments (mpe:...)") from None
        raise


class MPECopy(SingleEnv):
    """One PettingZoo parallel MPE environment."""

    copyable = False  # PettingZoo's wrappers do not survive a deep copy

    def __init__(self, name: str, seed: int, time_limit: int, how: str, env_kwargs: dict):
        module = _module(name)
        self.env_id = f"mpe:{name}"
        try:
            # One step past the time limit: qmix counts the limit itself, so a task solved on the
            # last step still ends as terminated.
            self.env = module.parallel_env(max_cycles=time_limit + 1, continuous_actions=False, **env_kwargs)
        except TypeError as exc:
            raise QmixError(f"bad env_args.env_kwargs for {self.env_id}: {exc}.") from None
        self.seed, self.how, self._seeded = seed, how, False
        self.agents = list(self.env.possible_agents)
        obs_sizes = [int(np.prod(self.env.observation_space(a).shape)) for a in self.agents]
        counts = [int(self.env.action_space(a).n) for a in self.agents]
        n, n_actions = len(self.agents), max(counts)
        self._avail = np.zeros((n, n_actions), bool)
        for i, c in enumerate(counts):
            self._avail[i, :c] = True
        state_dim = int(np.prod(self.env.state_space.shape))
        self.info = EnvInfo(n_agents=n, n_actions=n_actions, obs_dim=max(obs_sizes), state_dim=state_dim,
                            episode_limit=time_limit)

    def _observe(self, obs: dict):
        out = np.zeros((self.info.n_agents, self.info.obs_dim), np.float32)
        for i, a in enumerate(self.agents):
            o = np.asarray(obs[a], np.float32).reshape(-1)
            out[i, : o.shape[0]] = o
        state = np.asarray(self.env.state(), np.float32).reshape(-1)
        return out, state, self._avail.copy()

    def reset(self):
        if not self._seeded:
            obs, _ = self.env.reset(seed=self.seed)
            self._seeded = True
        else:
            obs, _ = self.env.reset()
        return self._observe(obs)

    def step(self, actions):
        acts = {a: int(actions[i]) for i, a in enumerate(self.agents)}
        obs, rewards, terms, truncs, _ = self.env.step(acts)
        o, s, av = self._observe(obs)
        reward = team_reward([rewards[a] for a in self.agents], self.how)
        term = all(bool(terms[a]) for a in self.agents)
        trunc = all(bool(truncs[a]) for a in self.agents)
        return o, s, av, reward, term, trunc, {}

    def close(self):
        self.env.close()


def _make_copy(name, time_limit, how, env_kwargs, index, seed):
    return MPECopy(name, seed, time_limit, how, env_kwargs)


def make_mpe(name: str, num_envs: int, seed: int, device, **env_args):
    env_id = f"mpe:{name}"
    args = check_env_args(env_id, env_args, MPE_ENV_ARGS)
    how = check_reward_aggregation(env_id, args["reward_aggregation"])
    if args["time_limit"] < 1:
        raise QmixError(f"env_args.time_limit for {env_id} must be positive, got {args['time_limit']}.")
    _module(name)
    make_copy = functools.partial(_make_copy, name, args["time_limit"], how, dict(args["env_kwargs"]))
    return VectorEnv(env_id, make_copy, num_envs, seed, device, args["workers"], args["worker_timeout"])


register("mpe", make_mpe, lambda: list(COOPERATIVE))
