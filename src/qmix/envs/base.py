"""The batched environment interface every environment in qmix implements.

An environment is a batch of ``num_envs`` independent copies stepped together. All arrays are
torch tensors on ``env.device`` with a leading batch dimension ``B = num_envs``:

- ``reset(mask=None) -> (obs, state, avail)``
    ``obs   [B, n_agents, obs_dim]`` float32
    ``state [B, state_dim]`` float32
    ``avail [B, n_agents, n_actions]`` bool
  With ``mask`` (a bool tensor ``[B]``) only the copies where ``mask`` is True start a new
  episode; the others are returned unchanged. ``reset()`` with no mask resets every copy.
- ``step(actions [B, n_agents] int64) -> StepResult``
  The returned obs/state/avail are those reached by this step. A copy whose episode ended
  (``terminated | truncated``) keeps returning its final observation until it is reset; it is
  the caller (the rollout) that calls ``reset(mask=ended)``. Stepping an ended copy without
  resetting it is undefined.

``terminated`` means a true terminal state (no bootstrap); ``truncated`` means the episode was
cut by the time limit (bootstrap from the final state). ``info`` maps names to tensors ``[B]``
that are meaningful on the copies whose episode ended this step (e.g. ``battle_won``).
"""

from __future__ import annotations

import copy
import types
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import NamedTuple

import torch


@dataclass(frozen=True)
class EnvInfo:
    """Static sizes of an environment; identical for every copy in the batch."""

    n_agents: int
    n_actions: int
    obs_dim: int
    state_dim: int
    episode_limit: int  # maximum number of steps in one episode (the time limit)
    # Names of the per-episode outcome entries ``step`` puts in ``info`` (e.g. "battle_won").
    info_keys: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict:
        return {
            "n_agents": self.n_agents,
            "n_actions": self.n_actions,
            "obs_dim": self.obs_dim,
            "state_dim": self.state_dim,
            "episode_limit": self.episode_limit,
        }


class StepResult(NamedTuple):
    obs: torch.Tensor  # [B, n_agents, obs_dim] float32
    state: torch.Tensor  # [B, state_dim] float32
    avail: torch.Tensor  # [B, n_agents, n_actions] bool
    reward: torch.Tensor  # [B] float32, one shared team reward per copy
    terminated: torch.Tensor  # [B] bool, true terminal state
    truncated: torch.Tensor  # [B] bool, time limit reached
    info: dict[str, torch.Tensor]  # name -> [B]; valid where the episode ended


class BatchedEnv(ABC):
    """Base class: subclasses set ``info``, ``num_envs`` and ``device`` and implement the rest."""

    info: EnvInfo
    num_envs: int
    device: torch.device

    @abstractmethod
    def reset(self, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Start new episodes (all copies, or those where ``mask`` is True)."""

    @abstractmethod
    def step(self, actions: torch.Tensor) -> StepResult:
        """Apply one joint action per copy; ``actions`` is ``[B, n_agents]`` int64."""

    def get_state(self):
        """Everything needed to continue every copy exactly (for checkpoints mid-episode).

        The default deep-copies the instance's attributes (less methods compiled by
        :func:`qmix.system.compile_methods`, which belong to this instance), which is right for
        environments whose state lives in tensors and plain Python objects. Environments holding
        processes, sockets or simulators they cannot copy override this to raise
        ``NotImplementedError``; a resumed run then starts fresh episodes on them.
        """
        return copy.deepcopy({k: v for k, v in self.__dict__.items() if not _compiled_method(v)})

    def set_state(self, state) -> None:
        """Continue from :meth:`get_state`'s copy, whose tensors come back on this environment's
        device (a checkpoint is read onto the CPU)."""
        self.__dict__.update(_on(copy.deepcopy(state), self.device))

    def close(self) -> None:
        """Release resources (worker processes, simulators). Safe to call twice."""

    # Rendering is optional; ``qmix evaluate --render`` uses it when ``can_render`` is True.
    can_render: bool = False

    def render_frame(self, index: int = 0):
        """A snapshot of copy ``index`` (any picklable object) for ``write_animation``."""
        raise NotImplementedError(f"{type(self).__name__} cannot render")

    def write_animation(self, frames: list, path: str) -> None:
        """Draw the snapshots from ``render_frame`` into an animation file (GIF) at ``path``."""
        raise NotImplementedError(f"{type(self).__name__} cannot render")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _on(value, device):
    """``value`` with every tensor in it (in dicts, lists and tuples too) on ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _on(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_on(v, device) for v in value)
    return value


def _compiled_method(value) -> bool:
    """A method wrapper installed by :func:`qmix.system.compile_methods` (plain functions only, so
    that no other attribute's ``__getattr__`` is consulted)."""
    return isinstance(value, types.FunctionType) and getattr(value, "compiled_by_qmix", False)
