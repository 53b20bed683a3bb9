"""``vmas:<scenario>``: VMAS (Vectorized Multi-Agent Simulator), natively batched in PyTorch.

One VMAS environment simulates all ``num_envs`` copies at once on ``device``
(``vmas.make_env(num_envs=B, device=..., continuous_actions=False)``); nothing is copied or
wrapped per copy, and the tensors stay on the device.

- actions: VMAS's discrete actions (each agent's ``Discrete`` space, the product of its per-
  dimension choices); agents with fewer actions have the extra ones masked out, otherwise every
  action is available (VMAS has no action masks).
- team reward: the sum of the agents' rewards (``reward_aggregation: mean`` averages). Many VMAS
  scenarios give every agent the same shared reward, so the sum is ``n_agents`` times it; use
  ``mean`` to get the shared reward itself.
- state: the concatenation of the agents' flattened observations (VMAS has no global state).
- time limit: ``time_limit`` (default 100, VMAS's and BenchMARL's usual horizon) gives
  ``truncated``; the scenario's own ``done`` gives ``terminated`` and wins over the limit.
- reset with a mask resets the masked copies one by one with VMAS's ``reset_at(index)`` (all of
  them at once with ``reset()`` when every copy is masked).
- seeding: VMAS seeds the whole batch with ``seed`` (not ``seed + i`` per copy); the same seed
  gives the same trajectories. Each environment keeps its own random state (VMAS's is shared by
  all its environments and kept apart from torch's global one).
- ``env_kwargs`` are passed to the scenario (e.g. ``{n_agents: 4}``).
"""

from __future__ import annotations

import contextlib
import difflib
from typing import Any

import torch

from qmix.envs.base import BatchedEnv, EnvInfo, StepResult
from qmix.envs.registry import check_env_args, register
from qmix.envs.vector import check_reward_aggregation
from qmix.errors import QmixError, missing_package

VMAS_ENV_ARGS: dict[str, Any] = {
    "time_limit": 100,
    "reward_aggregation": "sum",
    "env_kwargs": {},
}


def _import():
    try:
        import vmas
    except ImportError:
        raise missing_package("vmas", "vmas", "VMAS (vmas:...)") from None
    return vmas


def _scenarios() -> list[str]:
    vmas = _import()
    return sorted(set(vmas.scenarios) | set(getattr(vmas, "mpe_scenarios", [])))


def _flat(obs) -> torch.Tensor:
    """One agent's observation (a tensor or a nested dict of tensors) as ``[B, d]`` float32."""
    if isinstance(obs, dict):
        return torch.cat([_flat(obs[k]) for k in sorted(obs)], dim=-1)
    return obs.reshape(obs.shape[0], -1).float()


class VMASEnv(BatchedEnv):
    def __init__(self, name: str, num_envs: int, seed: int, device: torch.device, time_limit: int,
                 how: str, env_kwargs: dict):
        vmas = _import()

        self.env_id = f"vmas:{name}"
        self.num_envs, self.device, self.how = num_envs, torch.device(device), how
        try:
            self.env = vmas.make_env(
                name, num_envs=num_envs, device=self.device, continuous_actions=False, max_steps=time_limit,
                seed=seed, terminated_truncated=True, **env_kwargs,
            )
        except TypeError as exc:
            raise QmixError(f"bad env_args.env_kwargs for {self.env_id}: {exc}.") from None
        # VMAS keeps one random state for all its environments (a class attribute); each of ours
        # gets its own, so that two environments in one process do not disturb each other.
        self._rng_state = list(self.env.vmas_random_state)
        counts = []
        for sp in self.env.action_space.spaces:
            if type(sp).__name__ != "Discrete":  # gym or gymnasium Discrete, depending on vmas
                raise QmixError(f"{self.env_id}: expected discrete actions, got {sp}.")
            counts.append(int(sp.n))
        n, n_actions = len(counts), max(counts)
        avail = torch.zeros(n, n_actions, dtype=torch.bool, device=self.device)
        for i, c in enumerate(counts):
            avail[i, :c] = True
        self._avail_row = avail
        obs = [_flat(o) for o in self.env.get_from_scenario(True, False, False, False)[0]]
        sizes = [o.shape[-1] for o in obs]
        self._sizes = sizes
        self.info = EnvInfo(n_agents=n, n_actions=n_actions, obs_dim=max(sizes), state_dim=sum(sizes),
                            episode_limit=time_limit)
        B = num_envs
        self._obs = torch.zeros(B, n, max(sizes), device=self.device)
        self._state = torch.zeros(B, sum(sizes), device=self.device)
        self._ended = torch.zeros(B, dtype=torch.bool, device=self.device)

    @contextlib.contextmanager
    def _own_rng(self):
        shared = self.env.vmas_random_state
        saved = list(shared)
        shared[:] = self._rng_state
        try:
            yield
        finally:
            self._rng_state = list(shared)
            shared[:] = saved

    def _observe(self, obs_list) -> tuple[torch.Tensor, torch.Tensor]:
        flat = [_flat(o) for o in obs_list]
        state = torch.cat(flat, dim=-1)
        d = self.info.obs_dim
        obs = torch.stack([torch.nn.functional.pad(o, (0, d - o.shape[-1])) for o in flat], dim=1)
        return obs, state

    def _avail(self) -> torch.Tensor:
        return self._avail_row.unsqueeze(0).expand(self.num_envs, -1, -1).clone()

    def reset(self, mask: torch.Tensor | None = None):
        if mask is None or bool(mask.all()):
            with self._own_rng():
                obs_list = self.env.reset()
            self._obs, self._state = self._observe(obs_list)
            self._ended.zero_()
        else:
            mask = mask.to(self.device)
            with self._own_rng():
                for i in torch.nonzero(mask).flatten().tolist():
                    self.env.reset_at(i, return_observations=False)
                obs_list = self.env.get_from_scenario(True, False, False, False)[0]
            obs, state = self._observe(obs_list)
            m = mask.view(-1, 1)
            self._obs = torch.where(m.unsqueeze(-1), obs, self._obs)
            self._state = torch.where(m, state, self._state)
            self._ended &= ~mask
        return self._obs.clone(), self._state.clone(), self._avail()

    def step(self, actions: torch.Tensor) -> StepResult:
        actions = actions.to(self.device)
        acts = [actions[:, i].clone() for i in range(self.info.n_agents)]
        with self._own_rng():
            obs_list, rewards, terminated, truncated, _ = self.env.step(acts)
        obs, state = self._observe(obs_list)
        r = torch.stack([x.float() for x in rewards], dim=-1)
        reward = r.sum(-1) if self.how == "sum" else r.mean(-1)
        terminated = terminated.to(torch.bool)
        truncated = truncated.to(torch.bool) & ~terminated
        # Copies that had already ended keep their final observation and report nothing new.
        live = ~self._ended
        self._obs = torch.where(live.view(-1, 1, 1), obs, self._obs)
        self._state = torch.where(live.view(-1, 1), state, self._state)
        reward = torch.where(live, reward, torch.zeros_like(reward))
        terminated = terminated & live
        truncated = truncated & live
        self._ended |= terminated | truncated
        return StepResult(self._obs.clone(), self._state.clone(), self._avail(), reward, terminated, truncated, {})

    def close(self) -> None:
        pass


def make_vmas(name: str, num_envs: int, seed: int, device, **env_args) -> BatchedEnv:
    env_id = f"vmas:{name}"
    args = check_env_args(env_id, env_args, VMAS_ENV_ARGS)
    how = check_reward_aggregation(env_id, args["reward_aggregation"])
    if args["time_limit"] < 1:
        raise QmixError(f"env_args.time_limit for {env_id} must be positive, got {args['time_limit']}.")
    known = _scenarios()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise QmixError(f"unknown VMAS scenario {name!r}{hint}; known: {', '.join(known)}.")
    return VMASEnv(name, num_envs, seed, device, args["time_limit"], how, dict(args["env_kwargs"]))


register("vmas", make_vmas, lambda: list(_import().scenarios))
