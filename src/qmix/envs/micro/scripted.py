"""Scripted policies for sanity checks: focus fire (a strong baseline) and uniform random.

Both return valid actions ``[B, n_agents]`` for a :class:`~qmix.envs.micro.env.MicroEnv` and never
synchronise with the host, so they can drive batched rollouts on any device.
"""

from __future__ import annotations

import torch

from qmix.envs.micro.env import MicroEnv

NO_OP, STOP, NORTH, SOUTH, EAST, WEST, FIRST_TARGET = 0, 1, 2, 3, 4, 5, 6


def random_actions(avail: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform over the available actions: ``avail [B, n, n_actions]`` bool -> ``[B, n]``."""
    B, n, k = avail.shape
    flat = avail.reshape(B * n, k).float()
    return torch.multinomial(flat, 1, generator=generator).reshape(B, n)


def focus_fire_actions(env: MicroEnv, avail: torch.Tensor | None = None) -> torch.Tensor:
    """Every agent attacks the enemy with the least HP + shield among those it may attack;
    with none in range it steps toward the nearest living enemy. A medivac heals the most
    damaged ally it may heal, else stops. Dead agents no-op."""
    A = env.n_agents
    if avail is None:
        avail = env.avail_actions()
    alive = env.hp > 0  # [B, U]
    health = env.hp + env.shield
    targets = avail[:, :, FIRST_TARGET:]  # [B, A, E]
    weakest = torch.where(targets, health[:, None, A:], float("inf")).argmin(-1)  # [B, A]
    # medivacs: most missing HP among the allies they may heal (slot i = ally i)
    k = min(A, env.n_enemies)
    missing = torch.zeros_like(targets, dtype=torch.float32)
    missing[:, :, :k] = (env.max_hp - env.hp)[:, None, :k]
    neediest = torch.where(targets, missing, -1.0).argmax(-1)
    choice = torch.where(env.agent_is_healer, neediest, weakest)
    can_target = targets.any(-1)

    # step toward the nearest living enemy along the larger axis, if that move is available
    rel = env.pos[:, None, A:, :] - env.pos[:, :A, None, :]  # [B, A, E, 2]
    dist = torch.where(alive[:, None, A:], rel.norm(dim=-1), float("inf"))
    nearest = dist.argmin(-1)  # [B, A]
    d = rel.gather(2, nearest[..., None, None].expand(-1, -1, 1, 2))[:, :, 0]  # [B, A, 2]
    vertical = d[..., 1].abs() >= d[..., 0].abs()
    primary = torch.where(vertical, torch.where(d[..., 1] > 0, NORTH, SOUTH), torch.where(d[..., 0] > 0, EAST, WEST))
    secondary = torch.where(vertical, torch.where(d[..., 0] > 0, EAST, WEST), torch.where(d[..., 1] > 0, NORTH, SOUTH))
    ok1 = avail.gather(2, primary[..., None])[..., 0]
    ok2 = avail.gather(2, secondary[..., None])[..., 0]
    move = torch.where(ok1, primary, torch.where(ok2, secondary, STOP))
    move = torch.where(env.agent_is_healer, STOP, move)
    actions = torch.where(can_target, FIRST_TARGET + choice, move)
    return torch.where(alive[:, :A], actions, NO_OP)
