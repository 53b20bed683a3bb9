"""Greedy evaluation of a saved policy, and rendering of an episode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from qmix import checkpoint as ckpt
from qmix.config import from_stored
from qmix.controller import masked_argmax
from qmix.envs import make
from qmix.errors import QmixError
from qmix.modules import build_agent
from qmix.rollout import Runner
from qmix.trainer import resolve_device


def load_policy(path: str, device: str = "cpu"):
    """(config, agent network) from a run directory or checkpoint."""
    state = ckpt.load(path, buffer=False)
    try:
        cfg = from_stored(state["config"])
    except QmixError as e:
        raise QmixError(f"the checkpoint's config is invalid: {e}") from None
    info = state["env_info"]
    agent = build_agent(cfg, info["obs_dim"], info["n_agents"], info["n_actions"])
    try:
        agent.load_state_dict(state["learner"]["agent"])
    except (RuntimeError, KeyError) as e:
        raise QmixError(f"the checkpoint's agent weights do not match its config ({str(e).splitlines()[0][:100]}).") from None
    return cfg, agent.to(resolve_device(device)).eval(), info


def evaluate(path: str, episodes: int = 32, seed: int = 0, device: str = "cpu", num_envs: int = 0) -> dict:
    """Run ``episodes`` greedy episodes; returns episodes, return_mean/std, win_rate, ep_length_mean."""
    if episodes < 1:
        raise QmixError(f"--episodes must be at least 1, got {episodes}.")
    cfg, agent, info = load_policy(path, device)
    dev = resolve_device(device)
    env = make(cfg.env, num_envs=num_envs or min(episodes, 32), seed=seed, device=dev, **cfg.env_args)
    try:
        if env.info.as_dict() != info:
            raise QmixError(f"{cfg.env} now has sizes {env.info.as_dict()}, but the policy was trained on {info}.")
        runner = Runner(cfg, env, agent, torch.Generator(device=env.device).manual_seed(seed))
        eps = runner.run_episodes(episodes, epsilon=0.0)
    finally:
        env.close()
    result = {
        "episodes": len(eps),
        "return_mean": float(np.mean(eps.returns)),
        "return_std": float(np.std(eps.returns)),
        "win_rate": float(np.mean(eps.info["battle_won"])) if "battle_won" in eps.info else None,
        "ep_length_mean": float(np.mean(eps.lengths)),
    }
    return result


@torch.no_grad()
def render(path: str, out: str, seed: int = 0, device: str = "cpu") -> dict:
    """Play one greedy episode and draw it into ``out`` (e.g. battle.gif)."""
    cfg, agent, info = load_policy(path, device)
    env = make(cfg.env, num_envs=1, seed=seed, device=resolve_device(device), **cfg.env_args)
    try:
        if not env.can_render:
            raise QmixError(f"{cfg.env} cannot be rendered; rendering is available for micro: maps.")
        obs, state, avail = env.reset()
        n = info["n_agents"]
        hidden = agent.initial_hidden(1, n, obs.device)
        last = torch.full((1, n), -1, dtype=torch.long, device=obs.device)
        frames, ret, steps = [env.render_frame(0)], 0.0, 0
        while True:
            q, hidden = agent.forward_step(obs, last, hidden)
            last = masked_argmax(q, avail)
            res = env.step(last)
            obs, avail = res.obs, res.avail
            ret += float(res.reward[0])
            steps += 1
            frames.append(env.render_frame(0))
            if bool(res.terminated[0] | res.truncated[0]):
                break
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        env.write_animation(frames, out)
    finally:
        env.close()
    won = res.info.get("battle_won")
    return {"path": out, "return": ret, "ep_length": steps, "battle_won": bool(won[0]) if won is not None else None}
