"""Environment speed: env steps per second (one env step = one step of one copy)."""

from __future__ import annotations

import time

import torch

from qmix.envs import make


def _random_valid_actions(avail: torch.Tensor) -> torch.Tensor:
    """One uniformly random available action per agent, on ``avail``'s device: ``[B, n]``."""
    noise = torch.rand(avail.shape, device=avail.device)
    return torch.where(avail, noise, -1.0).argmax(-1)


def run_env_bench(env_id: str, num_envs_list: list[int], steps: int, device: str, seed: int,
                  warmup: int = 5, env_args: dict | None = None) -> list[dict]:
    """Step ``env_id`` (built with ``env_args``) with random valid actions for ``steps`` steps at
    each batch size, after ``warmup`` untimed steps (which also compile what compiles).

    Ended copies are reset with a mask, as in a real rollout. Returns one row per batch size:
    ``{"env", "num_envs", "steps", "seconds", "env_steps_per_s", "episodes", "device", "threads"}``.
    """
    rows = []
    for num_envs in num_envs_list:
        env = make(env_id, num_envs=num_envs, seed=seed, device=device, **(env_args or {}))
        try:
            _, _, avail = env.reset()
            torch.manual_seed(seed)
            episodes = torch.zeros((), dtype=torch.long, device=env.device)

            def run(n: int):
                nonlocal avail, episodes
                for _ in range(n):
                    result = env.step(_random_valid_actions(avail))
                    ended = result.terminated | result.truncated
                    episodes = episodes + ended.sum()
                    _, _, avail = env.reset(ended)

            run(warmup)
            episodes = torch.zeros((), dtype=torch.long, device=env.device)  # count timed ones only
            _sync(env.device)
            start = time.perf_counter()
            run(steps)
            _sync(env.device)
            seconds = time.perf_counter() - start
        finally:
            env.close()
        rows.append({
            "env": env_id, "num_envs": num_envs, "steps": steps, "seconds": round(seconds, 4),
            "env_steps_per_s": num_envs * steps / seconds, "episodes": int(episodes),
            "device": str(device), "threads": torch.get_num_threads(),
        })
    return rows


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
