"""qmix: fast, dependable QMIX, VDN and IQL for cooperative multi-agent reinforcement learning."""

__version__ = "0.1.0"


def train(alg: str = "qmix", env: str = "micro:3m", **kwargs):
    """Train a team; see :func:`qmix.trainer.train` for the arguments. Returns the run summary."""
    from qmix.trainer import train as _train

    return _train(alg=alg, env=env, **kwargs)


def __getattr__(name: str):
    # ``qmix.envs`` is loaded on first use (it loads torch): the command line starts its work,
    # such as a learner process, before that.
    if name == "envs":
        import importlib

        return importlib.import_module("qmix.envs")
    raise AttributeError(f"module 'qmix' has no attribute {name!r}")


__all__ = ["envs", "train", "__version__"]
