"""Environments: the batched interface, the registry, our simulators and adapters."""

from qmix.envs.base import BatchedEnv, EnvInfo, StepResult
from qmix.envs.registry import FAMILIES, list_env_ids, make, register

__all__ = ["BatchedEnv", "EnvInfo", "StepResult", "FAMILIES", "list_env_ids", "make", "register"]
