"""Env ids (``family:name``) to batched environments.

A family registers a factory ``(name, num_envs, seed, device, **env_args) -> BatchedEnv`` and a
function listing its known names (for ``qmix envs``). Family modules are imported lazily, so a
missing optional package only matters when that family is used.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Callable

import torch

from qmix.envs.base import BatchedEnv
from qmix.errors import QmixError


@dataclass(frozen=True)
class Family:
    name: str
    module: str  # imported on first use; it must call ``register`` for this family
    description: str
    extra: str | None = None  # the pip extra that installs its dependencies


# Every family qmix knows about; the module registers the factory when imported.
FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family("matrix", "qmix.envs.matrix", "one- and two-step cooperative matrix games (QMIX paper)"),
        Family("micro", "qmix.envs.micro", "SMAC-compatible battles without StarCraft II, batched in PyTorch"),
        Family("lbf", "qmix.envs.lbf", "Level-Based Foraging (lbforaging)", "lbf"),
        Family("rware", "qmix.envs.rware", "Multi-Robot Warehouse (rware)", "rware"),
        Family("mpe", "qmix.envs.mpe", "PettingZoo Multi-Particle Environments (mpe2)", "mpe"),
        Family("vmas", "qmix.envs.vmas", "VMAS, natively batched (vmas)", "vmas"),
        Family("smac", "qmix.envs.smac", "StarCraft II SMAC (needs StarCraft II and smac)", "smac"),
        Family("smacv2", "qmix.envs.smac", "StarCraft II SMACv2 (needs StarCraft II and smacv2)", "smac"),
        Family("gym", "qmix.envs.gym", "any Gymnasium multi-agent task (tuple obs/actions)", "gym"),
    ]
}

Factory = Callable[..., BatchedEnv]
_FACTORIES: dict[str, Factory] = {}
_LISTERS: dict[str, Callable[[], list[str]]] = {}


def register(family: str, factory: Factory, list_names: Callable[[], list[str]] | None = None) -> None:
    """Called by a family module at import time."""
    _FACTORIES[family] = factory
    if list_names is not None:
        _LISTERS[family] = list_names


def split_env_id(env_id: str) -> tuple[str, str]:
    """``"micro:3m" -> ("micro", "3m")`` with a clear error for malformed or unknown ids."""
    if not isinstance(env_id, str) or ":" not in env_id:
        raise QmixError(
            f"env id {env_id!r} is not of the form family:name (e.g. micro:3m); "
            f"known families: {', '.join(FAMILIES)}."
        )
    family, name = env_id.split(":", 1)
    if family not in FAMILIES and family not in _FACTORIES:  # built in, or registered by the user
        known = list(FAMILIES) + [f for f in _FACTORIES if f not in FAMILIES]
        close = difflib.get_close_matches(family, known, n=2)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise QmixError(f"unknown env family {family!r}{hint}; known families: {', '.join(known)}.")
    if not name:
        raise QmixError(f"env id {env_id!r} has no name after the colon (e.g. {family}:...).")
    return family, name


def _load(family: str) -> None:
    if family not in _FACTORIES and family in FAMILIES:
        importlib.import_module(FAMILIES[family].module)


def make(
    env_id: str,
    num_envs: int = 1,
    seed: int = 0,
    device: str | torch.device = "cpu",
    **env_args,
) -> BatchedEnv:
    """Build ``num_envs`` copies of ``env_id`` as one batched environment.

    >>> env = make("matrix:two-step", num_envs=8, seed=0)
    >>> env.info.n_agents
    2
    """
    family, name = split_env_id(env_id)
    if not isinstance(num_envs, int) or num_envs < 1:
        raise QmixError(f"num_envs must be a positive integer, got {num_envs!r}.")
    _load(family)
    return _FACTORIES[family](name, num_envs=num_envs, seed=seed, device=torch.device(device), **env_args)


def list_env_ids(family: str) -> list[str]:
    """Known names of one family (empty when the family takes open-ended names)."""
    _load(family)
    lister = _LISTERS.get(family)
    return [f"{family}:{n}" for n in lister()] if lister else []


def check_env_args(env_id: str, env_args: dict, allowed: dict) -> dict:
    """Validate family-specific ``env_args`` against ``allowed`` (name -> default); return merged.

    Unknown names stop with one line naming the key and close matches.
    """
    merged = dict(allowed)
    for key, value in env_args.items():
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            known = ", ".join(sorted(allowed)) or "none"
            raise QmixError(f"unknown env_args key {key!r} for {env_id}{hint}; known keys: {known}.")
        default = allowed[key]
        if default is not None and not isinstance(value, type(default)):
            if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            else:
                raise QmixError(
                    f"env_args.{key} for {env_id} must be {type(default).__name__}, got {value!r}."
                )
        merged[key] = value
    return merged
