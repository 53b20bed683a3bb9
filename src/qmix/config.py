"""Typed configuration: presets (YAML per algorithm and per env family), overrides, validation.

Resolution order, later wins: the dataclass defaults < the algorithm preset
(``configs/algs/<alg>.yaml``) < the env family preset (``configs/envs/<family>.yaml``) < the
user's ``key=value`` overrides. The result is validated once here; inner code receives a
:class:`Config`, never a raw dict. Key names follow pymarl where pymarl has one.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field, fields
from importlib import resources
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from qmix.errors import QmixError

ALGORITHMS = ("qmix", "qmix-tuned", "vdn", "iql")


@dataclass
class Config:
    # --- what to run ---
    alg: str = "qmix"  # preset name: qmix (pymarl), qmix-tuned (pymarl2), vdn, iql
    env: str = "micro:3m"  # env id family:name
    env_args: dict = field(default_factory=dict)  # family-specific options (see docs/environments.md)
    seed: int = 1  # seeds networks, exploration, replay sampling and the environments
    device: str = "auto"  # auto, cpu, cuda or cuda:N

    # --- budget and data collection ---
    t_max: int = 2_050_000  # environment steps to train for
    num_envs: int = 1  # environments stepped together (pymarl's batch_size_run)
    episodes_per_update: int = 1  # one learner update per this many finished episodes
    buffer_size: int = 5000  # replay capacity in episodes
    buffer_device: str = "auto"  # where the replay lives: auto (= device), cpu or cuda
    buffer_obs_dtype: Literal["float32", "float16", "bfloat16"] = "float32"  # storage of obs/state

    # --- agent network ---
    agent: Literal["rnn", "mlp"] = "rnn"  # rnn: fc -> GRU -> fc (DRQN); mlp: fc -> fc -> fc
    rnn_hidden_dim: int = 64  # hidden width of the agent network (GRU state size)
    obs_agent_id: bool = True  # append the agent's one-hot id to its input
    obs_last_action: bool = True  # append the agent's previous action (one-hot)
    separate_agent_params: bool = False  # one network per agent instead of a shared one

    # --- mixer ---
    mixer: Literal["qmix", "vdn", "none"] = "qmix"
    mixing_embed_dim: int = 32  # width of the QMIX mixing network's hidden layer
    hypernet_layers: Literal[1, 2] = 1  # layers of the weight hypernetworks
    hypernet_embed: int = 64  # hidden width of 2-layer hypernetworks

    # --- learner ---
    batch_size: int = 32  # episodes per update
    lr: float = 5e-4  # learning rate
    optimizer: Literal["rmsprop", "adam"] = "rmsprop"  # optimiser of agents and mixer
    optim_alpha: float = 0.99  # RMSprop smoothing
    optim_eps: float = 1e-5  # optimiser epsilon
    grad_norm_clip: float = 10.0  # clip the global gradient norm to this
    gamma: float = 0.99  # discount
    double_q: bool = True  # argmax by the online nets, value by the target nets
    n_step: int = 1  # n-step returns (1 = one-step TD)
    td_lambda: float = 0.0  # TD(lambda) targets when > 0 (pymarl2 uses 0.6)
    target_update_interval: int = 200  # hard target copy every this many episodes
    target_update_tau: float = 0.0  # > 0: soft (Polyak) target update after every learner step
    standardise_rewards: bool = False  # rewards standardised by running mean/std (epymarl's option)

    # --- exploration ---
    epsilon_start: float = 1.0  # exploration at step 0
    epsilon_finish: float = 0.05  # exploration after annealing
    epsilon_anneal_steps: int = 50_000  # linear over environment steps

    # --- evaluation, logging, checkpoints ---
    test_interval: int = 10_000  # environment steps between greedy test phases
    test_episodes: int = 32  # greedy episodes per test phase (0 = no tests)
    test_num_envs: int = 0  # envs stepped together during tests (0 = min(test_episodes, 32))
    log_interval: int = 10_000  # environment steps between training-metric log lines
    checkpoint_interval: int = 200_000  # environment steps between checkpoints (0 = only at end)
    checkpoint_buffer: bool = True  # include the replay buffer in checkpoints (exact resume)
    checkpoint_keep: int = 0  # keep only the newest N step_* checkpoints (0 = keep all)
    checkpoint_keep_buffers: int = 1  # only the newest N checkpoints keep their replay buffer (0 = all)
    use_tensorboard: bool = True  # write TensorBoard events beside metrics.jsonl
    torch_threads: int = 0  # intra-op threads (0 = leave torch's default)
    native_kernels: Literal["auto", "on", "off"] = "auto"  # C++ kernels for the CPU learner: GRU, QMIX mixing (auto: if they build)
    learner_process: Literal["auto", "on", "off"] = "auto"  # learn beside collection, same results (auto: num_envs=1 on >= 2 CPUs)
    progress: bool = True  # live progress bar on the console

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Ranges checked in validate(): key -> (low, high, inclusive low)
_RANGES: dict[str, tuple[float, float | None]] = {
    "t_max": (1, None),
    "num_envs": (1, None),
    "episodes_per_update": (1, None),
    "buffer_size": (1, None),
    "rnn_hidden_dim": (1, None),
    "mixing_embed_dim": (1, None),
    "hypernet_embed": (1, None),
    "batch_size": (1, None),
    "lr": (0.0, None),
    "optim_alpha": (0.0, 1.0),
    "optim_eps": (0.0, None),
    "grad_norm_clip": (0.0, None),
    "gamma": (0.0, 1.0),
    "n_step": (1, None),
    "td_lambda": (0.0, 1.0),
    "target_update_interval": (1, None),
    "target_update_tau": (0.0, 1.0),
    "epsilon_start": (0.0, 1.0),
    "epsilon_finish": (0.0, 1.0),
    "epsilon_anneal_steps": (0, None),
    "test_interval": (1, None),
    "test_episodes": (0, None),
    "test_num_envs": (0, None),
    "log_interval": (1, None),
    "checkpoint_interval": (0, None),
    "checkpoint_keep": (0, None),
    "checkpoint_keep_buffers": (0, None),
    "torch_threads": (0, None),
}
_POSITIVE = {"lr", "gamma"}  # strictly > 0


def _field_types() -> dict[str, Any]:
    return get_type_hints(Config)


FIELD_NAMES = tuple(f.name for f in fields(Config))


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Convert ``value`` to the field's type or raise a one-line QmixError."""
    origin = get_origin(typ)
    if origin is Literal:
        choices = get_args(typ)
        if isinstance(value, bool) and "on" in choices and "off" in choices:
            return "on" if value else "off"  # YAML reads a bare on/off as true/false
        for c in choices:
            if value == c or (isinstance(value, str) and str(c) == value):
                return c
        raise QmixError(f"{key} must be one of {', '.join(map(str, choices))}; got {value!r}.")
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise QmixError(f"{key} must be true or false; got {value!r}.")
    if typ is int:
        if isinstance(value, bool):
            raise QmixError(f"{key} must be an integer; got {value!r}.")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value.replace("_", ""))
            except ValueError:
                f = None
            if f is not None and f.is_integer():
                return int(f)
        raise QmixError(f"{key} must be an integer; got {value!r}.")
    if typ is float:
        if isinstance(value, bool):
            raise QmixError(f"{key} must be a number; got {value!r}.")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise QmixError(f"{key} must be a number; got {value!r}.")
    if typ is str:
        if isinstance(value, str):
            return value
        raise QmixError(f"{key} must be a string; got {value!r}.")
    if typ is dict or origin is dict:
        if value is None:
            return {}
        if isinstance(value, dict):
            return dict(value)
        raise QmixError(f"{key} must be a mapping; got {value!r}.")
    raise AssertionError(f"unhandled config type {typ} for {key}")  # a bug, not a user error


def _unknown_key(key: str) -> QmixError:
    close = difflib.get_close_matches(key, FIELD_NAMES, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see `qmix train --help` for the keys."
    return QmixError(f"unknown config key {key!r}{hint}")


def parse_value(text: str) -> Any:
    """Parse the right-hand side of ``key=value`` as YAML (so 1e-3, true, [1, 2] work)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def nest_dotted(mapping: dict, where: str) -> dict:
    """``{"env_args.x": 1}`` -> ``{"env_args": {"x": 1}}``; mappings given twice are merged."""
    out: dict = {}
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise QmixError(f"{where}: config keys must be strings; got {key!r}.")
        parts = key.split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise QmixError(f"{where}: {key!r} conflicts with another key.")
        if isinstance(value, dict) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]] = {**node[parts[-1]], **value}
        else:
            node[parts[-1]] = value
    return out


def parse_overrides(items: list[str]) -> dict:
    """``["lr=1e-3", "env_args.time_limit=50"]`` -> nested dict, with one-line errors."""
    pairs: dict = {}
    for item in items:
        if "=" not in item:
            raise QmixError(f"override {item!r} is not of the form key=value.")
        key, text = item.split("=", 1)
        key = key.strip()
        if not key:
            raise QmixError(f"override {item!r} has an empty key.")
        pairs[key] = parse_value(text)
    return nest_dotted(pairs, "overrides")


def _load_yaml_resource(*parts: str) -> dict | None:
    res = resources.files("qmix").joinpath("configs", *parts)
    if not res.is_file():
        return None
    data = yaml.safe_load(res.read_text())
    return data or {}


def load_yaml_file(path: str) -> dict:
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise QmixError(f"config file {path} does not exist.") from None
    except yaml.YAMLError as e:
        raise QmixError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise QmixError(f"config file {path} must hold a mapping of config keys.")
    return data


def merge_config(base: dict, update: dict) -> dict:
    """``base`` updated by ``update``; ``env_args`` mappings are merged key by key."""
    out = dict(base)
    for k, v in update.items():
        if k == "env_args" and isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def alg_preset(alg: str) -> dict:
    if alg not in ALGORITHMS:
        close = difflib.get_close_matches(alg, ALGORITHMS, n=2)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise QmixError(f"unknown algorithm {alg!r}{hint}; known: {', '.join(ALGORITHMS)}.")
    return _load_yaml_resource("algs", f"{alg}.yaml") or {}


def _family_preset(family: str) -> dict:
    return _load_yaml_resource("envs", f"{family}.yaml") or {}


def env_preset(env_id: str) -> dict:
    from qmix.envs.registry import split_env_id

    family, _ = split_env_id(env_id)
    return _family_preset(family)


def guess_settings(overrides: dict) -> dict:
    """The presets of ``overrides``' alg and env family (the defaults where absent) with
    ``overrides`` on top, neither validated nor loading any environment code (nor torch): for
    decisions taken before a run is built (:func:`qmix.launch.prestart`). :func:`resolve` gives
    the real config."""
    alg, env_id = overrides.get("alg", Config.alg), overrides.get("env", Config.env)
    family = env_id.split(":", 1)[0] if isinstance(env_id, str) else ""
    env = _family_preset(family) if family.isidentifier() else {}
    return merge_config(merge_config(alg_preset(alg), env), overrides)


def resolve(overrides: dict | None = None, base: dict | None = None) -> Config:
    """Build a validated Config from presets and overrides (nested dict, e.g. from the CLI).

    ``base`` (e.g. a saved run's config) replaces the presets entirely when given.
    """
    overrides = dict(overrides or {})
    for key in overrides:
        if key not in FIELD_NAMES:
            raise _unknown_key(key)
    if base is None:
        alg = overrides.get("alg", Config.alg)
        env = overrides.get("env", Config.env)
        if not isinstance(alg, str):
            raise QmixError(f"alg must be a string; got {alg!r}.")
        if not isinstance(env, str):
            raise QmixError(f"env must be a string; got {env!r}.")
        merged = merge_config(merge_config(alg_preset(alg), env_preset(env)), overrides)
        merged["alg"], merged["env"] = alg, env
    else:
        merged = merge_config(base, overrides)
    return from_dict(merged)


# Keys that earlier versions wrote into run configs and checkpoints, and that had no effect.
RETIRED_KEYS = ("compile",)


def from_stored(data: dict) -> Config:
    """The config of a run directory or checkpoint written by this or an earlier version."""
    return from_dict({k: v for k, v in data.items() if k not in RETIRED_KEYS})


def from_dict(data: dict) -> Config:
    types = _field_types()
    kwargs = {}
    for key, value in data.items():
        if key not in types:
            raise _unknown_key(key)
        if isinstance(value, dict) and key != "env_args":
            raise QmixError(f"{key} is not a nested key; got a mapping {value!r}.")
        kwargs[key] = _coerce(key, value, types[key])
    cfg = Config(**kwargs)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    for key, (low, high) in _RANGES.items():
        value = getattr(cfg, key)
        if value < low or (key in _POSITIVE and value <= 0) or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"between {low} and {high}"
            if key in _POSITIVE:
                bound = "> 0" if high is None else f"in (0, {high}]"
            raise QmixError(f"{key} must be {bound}; got {value!r}.")
    if cfg.n_step > 1 and cfg.td_lambda > 0:
        raise QmixError("n_step > 1 and td_lambda > 0 are alternatives; set only one of them.")
    if cfg.epsilon_finish > cfg.epsilon_start:
        raise QmixError(
            f"epsilon_finish ({cfg.epsilon_finish}) must not exceed epsilon_start ({cfg.epsilon_start})."
        )
    if cfg.batch_size > cfg.buffer_size:
        raise QmixError(f"batch_size ({cfg.batch_size}) must not exceed buffer_size ({cfg.buffer_size}).")
    for key in ("device", "buffer_device"):
        value = getattr(cfg, key)
        if not (value in ("auto", "cpu") or value == "cuda" or value.startswith("cuda:")):
            raise QmixError(f"{key} must be auto, cpu, cuda or cuda:N; got {value!r}.")
    from qmix.envs.registry import split_env_id

    split_env_id(cfg.env)
    alg_preset(cfg.alg)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
