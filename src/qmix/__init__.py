"""qmix: fast, dependable QMIX, VDN and IQL for cooperative multi-agent reinforcement learning."""

from qmix import envs

__version__ = "0.1.0"


def train(alg: str = "qmix", env: str = "micro:3m", **kwargs):
    """Train a team; see :func:`qmix.trainer.train` for the arguments. Returns the run summary."""
    from qmix.trainer import train as _train

    return _train(alg=alg, env=env, **kwargs)


__all__ = ["envs", "train", "__version__"]
