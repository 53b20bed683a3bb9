"""Action selection: greedy and epsilon-greedy over available actions, and the epsilon schedule."""

from __future__ import annotations

import numpy as np
import torch

# Large negative utility for unavailable actions (finite, so 0 * it is still 0 in masked sums).
UNAVAILABLE = -1e10


def masked_argmax(q: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
    """Greedy action among the available ones: ``q [..., A]``, ``avail [..., A]`` bool -> ``[...]``."""
    return torch.where(avail, q, UNAVAILABLE).argmax(-1)


def epsilon_greedy(q: torch.Tensor, avail: torch.Tensor, epsilon: float, generator: torch.Generator | None) -> torch.Tensor:
    """Per agent: a uniformly random available action with probability epsilon, else greedy.

    ``q [B, n, A]``, ``avail [B, n, A]`` bool -> actions ``[B, n]`` int64. Unavailable actions are
    never chosen. Draws its randomness from ``generator`` only (resumable): one uniform draw per
    agent decides whether it explores, and the explorer takes the argmax of uniform noise over its
    available actions (a uniform choice among them).
    """
    if q.device.type == "cpu" and q.numel() <= SMALL and not q.requires_grad:
        return epsilon_greedy_arrays(q.numpy(), avail.numpy(), epsilon, generator)
    if epsilon <= 0.0:
        return masked_argmax(q, avail)
    noise = torch.rand(*q.shape[:-1], q.shape[-1] + 1, device=q.device, generator=generator)  # [B, n, A+1]
    scores, draw = noise.split([q.shape[-1], 1], dim=-1)  # [B, n, A], [B, n, 1]
    return masked_argmax(torch.where(draw < epsilon, scores, q), avail)


SMALL = 1024  # utilities up to this many: the choice in NumPy (a few env copies acting on the CPU)


def epsilon_greedy_arrays(q: np.ndarray, avail: np.ndarray, epsilon: float,
                          generator: torch.Generator | None) -> torch.Tensor:
    """:func:`epsilon_greedy` on NumPy arrays (``q`` float32, ``avail`` bool, on the CPU), whose
    per-call cost is a fraction of torch's on arrays this small: the same torch draw, the same
    comparisons in float32 (``epsilon`` rounded to float32 as torch rounds a Python scalar), the
    same first-maximum argmax, so the same actions."""
    if epsilon <= 0.0:
        scores = q
    else:
        A = q.shape[-1]
        noise = torch.rand(*q.shape[:-1], A + 1, generator=generator).numpy()
        scores = np.where(noise[..., A:] < np.float32(epsilon), noise[..., :A], q)
    return torch.from_numpy(np.where(avail, scores, np.float32(UNAVAILABLE)).argmax(-1).astype(np.int64, copy=False))


class EpsilonSchedule:
    """Linear annealing over environment steps (pymarl's DecayThenFlatSchedule, linear)."""

    def __init__(self, start: float, finish: float, anneal_steps: int):
        self.start, self.finish, self.anneal_steps = start, finish, anneal_steps

    def __call__(self, t_env: int) -> float:
        if self.anneal_steps <= 0:
            return self.finish
        frac = min(1.0, t_env / self.anneal_steps)
        return self.start + frac * (self.finish - self.start)
